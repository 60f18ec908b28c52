"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

``deidentify`` returns a de-identified copy of a dataset together with everything it
removed or replaced (``removed``, JSON-able), which is the PHI message that medarchive
seals and embeds; ``reidentify`` puts those values back.

What the Basic Profile does here (no options: no Retain Dates, Retain UIDs, Retain
Device Identity, Retain Private Tags, Clean Descriptors ...):

* every attribute of PS3.15 Table E.1-1 (``BASIC_PROFILE_TABLE`` below, 600+ rows, the
  2023 edition) gets its Basic Profile action, in the top-level dataset, in the file
  meta information and recursively in every item of every sequence;
* the combined codes of the table are resolved to one action, always one that removes
  the value: ``X/Z`` and ``X/Z/D`` and ``Z/D`` -> Z (keep the attribute, empty value:
  Type 2 attributes stay present), ``X/D`` -> X, ``X/Z/U*`` -> U (keep the sequence,
  replace the UIDs inside it, apply the table to the rest of its items);
* D (dummy) values are fixed, VR-conformant placeholders (``"ANONYMIZED"``,
  ``19000101``, ``0`` ...); a D or Z on a sequence empties it (the Basic Profile does not
  say what a dummy item would be, and an empty sequence carries no PHI);
* U replaces a UID with ``new_uid(old, uid_key)``: ``2.25.`` + the decimal of the first
  128 bits of HMAC-SHA256(uid_key, old), so the same original UID gets the same new UID
  for every file de-identified with the same keyring (studies and series stay
  together, references stay valid); a second pass replaces any other UI element whose
  value is one of the replaced UIDs (references in attributes the table does not list);
  SOP Class and Transfer Syntax UIDs are never in the table and never replaced;
* every private element (odd group, private creators included) is removed;
* curve data (50xx,eeee), overlay data (60xx,3000) and overlay comments (60xx,4000) are
  removed, as the table says; retired group-length elements (gggg,0000) outside the file
  meta are removed (they would be wrong after removals);
* beyond the table, the file meta AE titles (0002,0016..0018) and private information
  (0002,0100 / 0002,0102) are removed;
* Patient Identity Removed (0012,0062) = YES, De-identification Method (0012,0063) and
  De-identification Method Code Sequence (0012,0064) = (113100, DCM, "Basic Application
  Confidentiality Profile") are set.

Pixel data is not inspected (burned-in annotations are out of scope of the Basic
Profile's attribute actions).

``removed`` layout::

    {"format": "medarchive-deid-removed", "version": 1,
     "elements": {PATH: ELEMENT, ...}}

PATH is ``"GGGGEEEE"`` hex tags joined with ``/`` and sequence item indices, e.g.
``"00081140/0/00081155"``; the file meta is prefixed ``"meta/"``. ELEMENT is
``{"vr": VR, "value": V}`` (V: null, a scalar or a list; strings for string VRs,
integers, ``{"float": float.hex()}``, ``{"b64": ...}`` for bytes), ``{"vr": "SQ", "items":
[{"GGGGEEEE": ELEMENT, ...}, ...]}`` for a whole sequence, or ``{"absent": true}`` for an
attribute that de-identification added.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from .errors import MedcodecError

__all__ = [
    "BASIC_PROFILE_ACTIONS",
    "DEID_METHOD",
    "DeidError",
    "DeidResult",
    "deidentify",
    "reidentify",
    "new_uid",
    "removed_to_bytes",
    "removed_from_bytes",
]

DEID_METHOD = "DICOM PS3.15 Annex E Basic Profile; medarchive"
DEID_METHOD_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
REMOVED_FORMAT = "medarchive-deid-removed"
REMOVED_VERSION = 1
MIN_UID_KEY_BYTES = 16


class DeidError(MedcodecError):
    """De-identification or re-identification cannot proceed (bad key, malformed removed record, unrecordable value)."""


# PS3.15 (2023) Table E.1-1, Basic Profile column: tag, action code, keyword.
# Codes: D dummy, Z zero-length, X remove, U replace UID; combined codes as in the standard.
BASIC_PROFILE_TABLE = """
0002,0003  U      MediaStorageSOPInstanceUID
0004,1511  U      ReferencedSOPInstanceUIDInFile
0008,0012  X/D    InstanceCreationDate
0008,0013  X/Z/D  InstanceCreationTime
0008,0014  U      InstanceCreatorUID
0008,0015  X      InstanceCoercionDateTime
0008,0017  U      AcquisitionUID
0008,0018  U      SOPInstanceUID
0008,0019  U      PyramidUID
0008,0020  Z      StudyDate
0008,0021  X/D    SeriesDate
0008,0022  X/Z    AcquisitionDate
0008,0023  Z/D    ContentDate
0008,0024  X      OverlayDate
0008,0025  X      CurveDate
0008,002A  X/Z/D  AcquisitionDateTime
0008,0030  Z      StudyTime
0008,0031  X/D    SeriesTime
0008,0032  X/Z    AcquisitionTime
0008,0033  Z/D    ContentTime
0008,0034  X      OverlayTime
0008,0035  X      CurveTime
0008,0050  Z      AccessionNumber
0008,0054  X      RetrieveAETitle
0008,0055  X      StationAETitle
0008,0058  U      FailedSOPInstanceUIDList
0008,0080  X/Z/D  InstitutionName
0008,0081  X      InstitutionAddress
0008,0082  X/Z/D  InstitutionCodeSequence
0008,0090  Z      ReferringPhysicianName
0008,0092  X      ReferringPhysicianAddress
0008,0094  X      ReferringPhysicianTelephoneNumbers
0008,0096  X      ReferringPhysicianIdentificationSequence
0008,009C  Z      ConsultingPhysicianName
0008,009D  X      ConsultingPhysicianIdentificationSequence
0008,0106  D      ContextGroupVersion
0008,0107  D      ContextGroupLocalVersion
0008,0201  X      TimezoneOffsetFromUTC
0008,1000  X      NetworkID
0008,1010  X/Z/D  StationName
0008,1030  X      StudyDescription
0008,103E  X      SeriesDescription
0008,1040  X      InstitutionalDepartmentName
0008,1041  X      InstitutionalDepartmentTypeCodeSequence
0008,1048  X      PhysiciansOfRecord
0008,1049  X      PhysiciansOfRecordIdentificationSequence
0008,1050  X      PerformingPhysicianName
0008,1052  X      PerformingPhysicianIdentificationSequence
0008,1060  X      NameOfPhysiciansReadingStudy
0008,1062  X      PhysiciansReadingStudyIdentificationSequence
0008,1070  X/Z/D  OperatorsName
0008,1072  X/D    OperatorIdentificationSequence
0008,1080  X      AdmittingDiagnosesDescription
0008,1084  X      AdmittingDiagnosesCodeSequence
0008,1088  X      PyramidDescription
0008,1110  X/Z    ReferencedStudySequence
0008,1111  X/Z/D  ReferencedPerformedProcedureStepSequence
0008,1120  X      ReferencedPatientSequence
0008,1140  X/Z/U* ReferencedImageSequence
0008,1155  U      ReferencedSOPInstanceUID
0008,1195  U      TransactionUID
0008,2111  X      DerivationDescription
0008,2112  X/Z/U* SourceImageSequence
0008,3010  U      IrradiationEventUID
0008,4000  X      IdentifyingComments
0010,0010  Z      PatientName
0010,0020  Z      PatientID
0010,0021  X      IssuerOfPatientID
0010,0030  Z      PatientBirthDate
0010,0032  X      PatientBirthTime
0010,0040  Z      PatientSex
0010,0050  X      PatientInsurancePlanCodeSequence
0010,0101  X      PatientPrimaryLanguageCodeSequence
0010,0102  X      PatientPrimaryLanguageModifierCodeSequence
0010,1000  X      OtherPatientIDs
0010,1001  X      OtherPatientNames
0010,1002  X      OtherPatientIDsSequence
0010,1005  X      PatientBirthName
0010,1010  X      PatientAge
0010,1020  X      PatientSize
0010,1030  X      PatientWeight
0010,1040  X      PatientAddress
0010,1050  X      InsurancePlanIdentification
0010,1060  X      PatientMotherBirthName
0010,1080  X      MilitaryRank
0010,1081  X      BranchOfService
0010,1090  X      MedicalRecordLocator
0010,1100  X      ReferencedPatientPhotoSequence
0010,2000  X      MedicalAlerts
0010,2110  X      Allergies
0010,2150  X      CountryOfResidence
0010,2152  X      RegionOfResidence
0010,2154  X      PatientTelephoneNumbers
0010,2155  X      PatientTelecomInformation
0010,2160  X      EthnicGroup
0010,2180  X      Occupation
0010,21A0  X      SmokingStatus
0010,21B0  X      AdditionalPatientHistory
0010,21C0  X      PregnancyStatus
0010,21D0  X      LastMenstrualDate
0010,21F0  X      PatientReligiousPreference
0010,2203  X/Z    PatientSexNeutered
0010,2297  X      ResponsiblePerson
0010,2299  X      ResponsibleOrganization
0010,4000  X      PatientComments
0012,0010  D      ClinicalTrialSponsorName
0012,0020  D      ClinicalTrialProtocolID
0012,0021  Z      ClinicalTrialProtocolName
0012,0030  Z      ClinicalTrialSiteID
0012,0031  Z      ClinicalTrialSiteName
0012,0040  D      ClinicalTrialSubjectID
0012,0042  D      ClinicalTrialSubjectReadingID
0012,0050  Z      ClinicalTrialTimePointID
0012,0051  X      ClinicalTrialTimePointDescription
0012,0060  Z      ClinicalTrialCoordinatingCenterName
0012,0071  X      ClinicalTrialSeriesID
0012,0072  X      ClinicalTrialSeriesDescription
0012,0081  D      ClinicalTrialProtocolEthicsCommitteeName
0012,0082  X      ClinicalTrialProtocolEthicsCommitteeApprovalNumber
0012,0086  X      EthicsCommitteeApprovalEffectivenessStartDate
0012,0087  X      EthicsCommitteeApprovalEffectivenessEndDate
0014,407C  X      CalibrationTime
0014,407E  X      CalibrationDate
0016,002B  X      MakerNote
0016,004B  X      DeviceSettingDescription
0016,004D  X      CameraOwnerName
0016,004E  X      LensSpecification
0016,004F  X      LensMake
0016,0050  X      LensModel
0016,0051  X      LensSerialNumber
0016,0070  X      GPSVersionID
0016,0071  X      GPSLatitudeRef
0016,0072  X      GPSLatitude
0016,0073  X      GPSLongitudeRef
0016,0074  X      GPSLongitude
0016,0075  X      GPSAltitudeRef
0016,0076  X      GPSAltitude
0016,0077  X      GPSTimeStamp
0016,0078  X      GPSSatellites
0016,0079  X      GPSStatus
0016,007A  X      GPSMeasureMode
0016,007B  X      GPSDOP
0016,007C  X      GPSSpeedRef
0016,007D  X      GPSSpeed
0016,007E  X      GPSTrackRef
0016,007F  X      GPSTrack
0016,0080  X      GPSImgDirectionRef
0016,0081  X      GPSImgDirection
0016,0082  X      GPSMapDatum
0016,0083  X      GPSDestLatitudeRef
0016,0084  X      GPSDestLatitude
0016,0085  X      GPSDestLongitudeRef
0016,0086  X      GPSDestLongitude
0016,0087  X      GPSDestBearingRef
0016,0088  X      GPSDestBearing
0016,0089  X      GPSDestDistanceRef
0016,008A  X      GPSDestDistance
0016,008B  X      GPSProcessingMethod
0016,008C  X      GPSAreaInformation
0016,008D  X      GPSDateStamp
0016,008E  X      GPSDifferential
0018,0010  Z/D    ContrastBolusAgent
0018,0027  X      InterventionDrugStopTime
0018,0035  X      InterventionDrugStartTime
0018,1000  X/Z/D  DeviceSerialNumber
0018,1002  U      DeviceUID
0018,1004  X      PlateID
0018,1005  X      GeneratorID
0018,1007  X      CassetteID
0018,1008  X      GantryID
0018,1009  X      UniqueDeviceIdentifier
0018,100A  X      UDISequence
0018,100B  U      ManufacturerDeviceClassUID
0018,1012  X      DateOfSecondaryCapture
0018,1014  X      TimeOfSecondaryCapture
0018,1030  X/D    ProtocolName
0018,1042  X      ContrastBolusStartTime
0018,1043  X      ContrastBolusStopTime
0018,1072  X      RadiopharmaceuticalStartTime
0018,1073  X      RadiopharmaceuticalStopTime
0018,1078  X      RadiopharmaceuticalStartDateTime
0018,1079  X      RadiopharmaceuticalStopDateTime
0018,11BB  D      AcquisitionFieldOfViewLabel
0018,1200  X      DateOfLastCalibration
0018,1201  X      TimeOfLastCalibration
0018,1202  X      DateTimeOfLastCalibration
0018,1203  Z      CalibrationDateTime
0018,1204  X      DateOfManufacture
0018,1205  X      DateOfInstallation
0018,1400  X/D    AcquisitionDeviceProcessingDescription
0018,2042  U      TargetUID
0018,4000  X      AcquisitionComments
0018,5011  X      TransducerIdentificationSequence
0018,700A  X/D    DetectorID
0018,700C  X/D    DateOfLastDetectorCalibration
0018,700E  X/D    TimeOfLastDetectorCalibration
0018,9074  D      FrameAcquisitionDateTime
0018,9151  D      FrameReferenceDateTime
0018,9185  X      RespiratoryMotionCompensationTechniqueDescription
0018,9367  D      XRaySourceID
0018,9369  D      SourceStartDateTime
0018,936A  D      SourceEndDateTime
0018,9371  D      XRayDetectorID
0018,9373  X      XRayDetectorLabel
0018,937B  X      MultienergyAcquisitionDescription
0018,937F  X      DecompositionDescription
0018,9424  X      AcquisitionProtocolDescription
0018,9516  X/D    StartAcquisitionDateTime
0018,9517  X/D    EndAcquisitionDateTime
0018,9623  D      FunctionalSyncPulse
0018,9701  D      DecayCorrectionDateTime
0018,9804  D      ExclusionStartDateTime
0018,9919  Z/D    InstructionPerformedDateTime
0018,9937  X      RequestedSeriesDescription
0018,A002  X      ContributionDateTime
0018,A003  X      ContributionDescription
0020,000D  U      StudyInstanceUID
0020,000E  U      SeriesInstanceUID
0020,0010  Z      StudyID
0020,0027  X      PyramidLabel
0020,0052  U      FrameOfReferenceUID
0020,0200  U      SynchronizationFrameOfReferenceUID
0020,3401  X      ModifyingDeviceID
0020,3403  X      ModifiedImageDate
0020,3405  X      ModifiedImageTime
0020,3406  X      ModifiedImageDescription
0020,4000  X      ImageComments
0020,9158  X      FrameComments
0020,9161  U      ConcatenationUID
0020,9164  U      DimensionOrganizationUID
0028,1199  U      PaletteColorLookupTableUID
0028,1214  U      LargePaletteColorLookupTableUID
0028,4000  X      ImagePresentationComments
0032,0012  X      StudyIDIssuer
0032,0032  X      StudyVerifiedDate
0032,0033  X      StudyVerifiedTime
0032,0034  X      StudyReadDate
0032,0035  X      StudyReadTime
0032,1000  X      ScheduledStudyStartDate
0032,1001  X      ScheduledStudyStartTime
0032,1010  X      ScheduledStudyStopDate
0032,1011  X      ScheduledStudyStopTime
0032,1020  X      ScheduledStudyLocation
0032,1021  X      ScheduledStudyLocationAETitle
0032,1030  X      ReasonForStudy
0032,1032  X      RequestingPhysician
0032,1033  X      RequestingService
0032,1040  X      StudyArrivalDate
0032,1041  X      StudyArrivalTime
0032,1050  X      StudyCompletionDate
0032,1051  X      StudyCompletionTime
0032,1060  X/Z    RequestedProcedureDescription
0032,1066  X      ReasonForVisit
0032,1067  X      ReasonForVisitCodeSequence
0032,1070  X      RequestedContrastAgent
0032,4000  X      StudyComments
0034,0001  D      FlowIdentifierSequence
0034,0002  D      FlowIdentifier
0034,0005  D      SourceIdentifier
0034,0007  D      FrameOriginTimestamp
0038,0004  X      ReferencedPatientAliasSequence
0038,0010  X      AdmissionID
0038,0011  X      IssuerOfAdmissionID
0038,0014  X      IssuerOfAdmissionIDSequence
0038,001A  X      ScheduledAdmissionDate
0038,001B  X      ScheduledAdmissionTime
0038,001C  X      ScheduledDischargeDate
0038,001D  X      ScheduledDischargeTime
0038,001E  X      ScheduledPatientInstitutionResidence
0038,0020  X      AdmittingDate
0038,0021  X      AdmittingTime
0038,0030  X      DischargeDate
0038,0032  X      DischargeTime
0038,0040  X      DischargeDiagnosisDescription
0038,0050  X      SpecialNeeds
0038,0060  X      ServiceEpisodeID
0038,0061  X      IssuerOfServiceEpisodeID
0038,0062  X      ServiceEpisodeDescription
0038,0064  X      IssuerOfServiceEpisodeIDSequence
0038,0300  X      CurrentPatientLocation
0038,0400  X      PatientInstitutionResidence
0038,0500  X      PatientState
0038,4000  X      VisitComments
003A,0310  U      MultiplexGroupUID
003A,0314  D      ImpedanceMeasurementDateTime
003A,0329  X      WaveformFilterDescription
003A,032B  X      FilterLookupTableDescription
0040,0001  X      ScheduledStationAETitle
0040,0002  X      ScheduledProcedureStepStartDate
0040,0003  X      ScheduledProcedureStepStartTime
0040,0004  X      ScheduledProcedureStepEndDate
0040,0005  X      ScheduledProcedureStepEndTime
0040,0006  X      ScheduledPerformingPhysicianName
0040,0007  X      ScheduledProcedureStepDescription
0040,0009  X      ScheduledProcedureStepID
0040,000B  X      ScheduledPerformingPhysicianIdentificationSequence
0040,0010  X      ScheduledStationName
0040,0011  X      ScheduledProcedureStepLocation
0040,0012  X      PreMedication
0040,0241  X      PerformedStationAETitle
0040,0242  X      PerformedStationName
0040,0243  X      PerformedLocation
0040,0244  X      PerformedProcedureStepStartDate
0040,0245  X      PerformedProcedureStepStartTime
0040,0250  X      PerformedProcedureStepEndDate
0040,0251  X      PerformedProcedureStepEndTime
0040,0253  X      PerformedProcedureStepID
0040,0254  X      PerformedProcedureStepDescription
0040,0275  X      RequestAttributesSequence
0040,0280  X      CommentsOnThePerformedProcedureStep
0040,0310  X      CommentsOnRadiationDose
0040,050A  X      SpecimenAccessionNumber
0040,0512  D      ContainerIdentifier
0040,0513  Z      IssuerOfTheContainerIdentifierSequence
0040,051A  X      ContainerDescription
0040,0551  D      SpecimenIdentifier
0040,0554  U      SpecimenUID
0040,0555  X/Z    AcquisitionContextSequence
0040,0562  Z      IssuerOfTheSpecimenIdentifierSequence
0040,0600  X      SpecimenShortDescription
0040,0602  X      SpecimenDetailedDescription
0040,0610  Z      SpecimenPreparationSequence
0040,06FA  X      SlideIdentifier
0040,1001  X      RequestedProcedureID
0040,1002  X      ReasonForTheRequestedProcedure
0040,1004  X      PatientTransportArrangements
0040,1005  X      RequestedProcedureLocation
0040,100A  X      ReasonForRequestedProcedureCodeSequence
0040,1010  X      NamesOfIntendedRecipientsOfResults
0040,1011  X      IntendedRecipientsOfResultsIdentificationSequence
0040,1101  D      PersonIdentificationCodeSequence
0040,1102  X      PersonAddress
0040,1103  X      PersonTelephoneNumbers
0040,1104  X      PersonTelecomInformation
0040,1400  X      RequestedProcedureComments
0040,2001  X      ReasonForTheImagingServiceRequest
0040,2004  X      IssueDateOfImagingServiceRequest
0040,2005  X      IssueTimeOfImagingServiceRequest
0040,2008  X      OrderEnteredBy
0040,2009  X      OrderEntererLocation
0040,2010  X      OrderCallbackPhoneNumber
0040,2011  X      OrderCallbackTelecomInformation
0040,2016  Z      PlacerOrderNumberImagingServiceRequest
0040,2017  Z      FillerOrderNumberImagingServiceRequest
0040,2400  X      ImagingServiceRequestComments
0040,3001  X      ConfidentialityConstraintOnPatientDataDescription
0040,4005  X      ScheduledProcedureStepStartDateTime
0040,4008  X      ScheduledProcedureStepExpirationDateTime
0040,4010  X      ScheduledProcedureStepModificationDateTime
0040,4011  X      ExpectedCompletionDateTime
0040,4023  U      ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
0040,4025  X      ScheduledStationNameCodeSequence
0040,4027  X      ScheduledStationGeographicLocationCodeSequence
0040,4028  X      PerformedStationNameCodeSequence
0040,4030  X      PerformedStationGeographicLocationCodeSequence
0040,4034  X      ScheduledHumanPerformersSequence
0040,4035  X      ActualHumanPerformersSequence
0040,4036  X      HumanPerformerOrganization
0040,4037  X      HumanPerformerName
0040,4050  X      PerformedProcedureStepStartDateTime
0040,4051  X      PerformedProcedureStepEndDateTime
0040,4052  X      ProcedureStepCancellationDateTime
0040,A023  X      FindingsGroupRecordingDateTrial
0040,A024  X      FindingsGroupRecordingTimeTrial
0040,A027  D      VerifyingOrganization
0040,A030  D      VerificationDateTime
0040,A032  X/D    ObservationDateTime
0040,A033  X      ObservationStartDateTime
0040,A073  D      VerifyingObserverSequence
0040,A075  D      VerifyingObserverName
0040,A078  X      AuthorObserverSequence
0040,A07A  X      ParticipantSequence
0040,A07C  X      CustodialOrganizationSequence
0040,A082  Z      ParticipationDateTime
0040,A088  Z      VerifyingObserverIdentificationCodeSequence
0040,A110  X      DateOfDocumentOrVerbalTransactionTrial
0040,A112  X      TimeOfDocumentCreationOrVerbalTransactionTrial
0040,A120  D      DateTime
0040,A121  D      Date
0040,A122  D      Time
0040,A123  D      PersonName
0040,A124  U      UID
0040,A13A  D      ReferencedDateTime
0040,A171  U      ObservationUID
0040,A172  U      ReferencedObservationUIDTrial
0040,A192  X      ObservationDateTrial
0040,A193  X      ObservationTimeTrial
0040,A307  X      CurrentObserverTrial
0040,A352  X      VerbalSourceTrial
0040,A353  X      AddressTrial
0040,A354  X      TelephoneNumberTrial
0040,A358  X      VerbalSourceIdentifierCodeSequenceTrial
0040,A402  U      ObservationSubjectUIDTrial
0040,A730  D      ContentSequence
0040,DB06  X      TemplateVersion
0040,DB07  X      TemplateLocalVersion
0040,DB0C  U      TemplateExtensionOrganizationUID
0040,DB0D  U      TemplateExtensionCreatorUID
0040,E004  X      HL7DocumentEffectiveTime
0042,0011  D      EncapsulatedDocument
0044,0004  X      ApprovalStatusDateTime
0044,000B  X      ProductExpirationDateTime
0044,0010  X      SubstanceAdministrationDateTime
0044,0104  D      AssertionDateTime
0044,0105  X      AssertionExpirationDateTime
0050,001B  X      ContainerComponentID
0050,0020  X      DeviceDescription
0050,0021  X      LongDeviceDescription
0062,0021  U      TrackingUID
0064,0003  U      SourceFrameOfReferenceUID
0068,6226  D      EffectiveDateTime
0068,6270  D      InformationIssueDateTime
006A,0003  D      AnnotationGroupUID
006A,0005  D      AnnotationGroupLabel
006A,0006  X      AnnotationGroupDescription
0070,0001  D      GraphicAnnotationSequence
0070,0082  X      PresentationCreationDate
0070,0083  X      PresentationCreationTime
0070,0084  Z/D    ContentCreatorName
0070,0086  X      ContentCreatorIdentificationCodeSequence
0070,031A  U      FiducialUID
0070,1101  U      PresentationDisplayCollectionUID
0070,1102  U      PresentationSequenceCollectionUID
0072,000A  D      HangingProtocolCreationDateTime
0072,005E  D      SelectorAEValue
0072,005F  D      SelectorASValue
0072,0061  D      SelectorDAValue
0072,0063  D      SelectorDTValue
0072,0065  D      SelectorOBValue
0072,0066  D      SelectorLOValue
0072,0068  D      SelectorLTValue
0072,006A  D      SelectorPNValue
0072,006B  D      SelectorTMValue
0072,006C  D      SelectorSHValue
0072,006D  D      SelectorUNValue
0072,006E  D      SelectorSTValue
0072,0070  D      SelectorUTValue
0072,0071  D      SelectorURValue
0074,1234  X      ReceivingAE
0074,1236  X      RequestingAE
0088,0140  U      StorageMediaFileSetUID
0088,0200  X      IconImageSequence
0088,0904  X      TopicTitle
0088,0906  X      TopicSubject
0088,0910  X      TopicAuthor
0088,0912  X      TopicKeywords
0100,0420  X      SOPAuthorizationDateTime
0400,0100  U      DigitalSignatureUID
0400,0105  D      DigitalSignatureDateTime
0400,0115  D      CertificateOfSigner
0400,0310  X      CertifiedTimestamp
0400,0402  X      ReferencedDigitalSignatureSequence
0400,0403  X      ReferencedSOPInstanceMACSequence
0400,0404  X      MAC
0400,0550  X      ModifiedAttributesSequence
0400,0551  X      NonconformingModifiedAttributesSequence
0400,0552  X      NonconformingDataElementValue
0400,0561  X      OriginalAttributesSequence
0400,0562  D      AttributeModificationDateTime
0400,0563  D      ModifyingSystem
0400,0564  Z      SourceOfPreviousValues
0400,0565  D      ReasonForTheAttributeModification
0400,0600  X      InstanceOriginStatus
2030,0020  X      TextString
2100,0040  X      CreationDate
2100,0050  X      CreationTime
2100,0070  X      Originator
2100,0140  D      DestinationAE
2200,0002  X/Z    LabelText
2200,0005  X/Z    BarcodeValue
3002,0121  X      PositionAcquisitionTemplateName
3002,0123  X      PositionAcquisitionTemplateDescription
3006,0002  D      StructureSetLabel
3006,0004  X      StructureSetName
3006,0006  X      StructureSetDescription
3006,0008  Z      StructureSetDate
3006,0009  Z      StructureSetTime
3006,0024  U      ReferencedFrameOfReferenceUID
3006,0026  Z      ROIName
3006,0028  X      ROIDescription
3006,0038  X      ROIGenerationDescription
3006,0085  X      ROIObservationLabel
3006,0088  X      ROIObservationDescription
3006,00A6  Z      ROIInterpreter
3006,00C2  U      RelatedFrameOfReferenceUID
3008,0024  D      TreatmentControlPointDate
3008,0025  D      TreatmentControlPointTime
3008,0054  X/D    FirstTreatmentDate
3008,0056  X/D    MostRecentTreatmentDate
3008,0105  X/Z    SourceSerialNumber
3008,0162  D      SafePositionExitDate
3008,0164  D      SafePositionExitTime
3008,0166  D      SafePositionReturnDate
3008,0168  D      SafePositionReturnTime
3008,0250  X/D    TreatmentDate
3008,0251  X/D    TreatmentTime
300A,0002  D      RTPlanLabel
300A,0003  X      RTPlanName
300A,0004  X      RTPlanDescription
300A,0006  X/D    RTPlanDate
300A,0007  X/D    RTPlanTime
300A,000B  X      TreatmentSites
300A,000E  X      PrescriptionDescription
300A,0013  U      DoseReferenceUID
300A,0016  X      DoseReferenceDescription
300A,0072  X      FractionGroupDescription
300A,0083  U      ReferencedDoseReferenceUID
300A,00B2  X/Z    TreatmentMachineName
300A,00C3  X      BeamDescription
300A,00DD  X      BolusDescription
300A,0196  X      FixationDeviceDescription
300A,01A6  X      ShieldingDeviceDescription
300A,01B2  X      SetupTechniqueDescription
300A,0216  X      SourceManufacturer
300A,022C  D      SourceStrengthReferenceDate
300A,022E  D      SourceStrengthReferenceTime
300A,02EB  X      CompensatorDescription
300A,0608  D      TreatmentPositionGroupLabel
300A,0609  U      TreatmentPositionGroupUID
300A,0611  Z      RTAccessoryHolderSlotID
300A,0615  Z      RTAccessoryDeviceSlotID
300A,0619  D      RadiationDoseIdentificationLabel
300A,0623  D      RadiationDoseInVivoMeasurementLabel
300A,062A  D      RTToleranceSetLabel
300A,0650  U      PatientSetupUID
300A,0676  X      EquipmentFrameOfReferenceDescription
300A,067C  D      RadiationGenerationModeLabel
300A,067D  Z      RadiationGenerationModeDescription
300A,0700  U      TreatmentSessionUID
300A,0734  D      TreatmentToleranceViolationDescription
300A,0736  D      TreatmentToleranceViolationDateTime
300A,073A  D      RecordedRTControlPointDateTime
300A,0741  D      InterlockDateTime
300A,0742  D      InterlockDescription
300A,0760  D      OverrideDateTime
300A,0783  D      InterlockOriginDescription
300A,0785  U      ReferencedTreatmentPositionGroupUID
300A,078E  X      PatientTreatmentPreparationProcedureParameterDescription
300A,0792  X      PatientTreatmentPreparationMethodDescription
300A,0794  X      PatientSetupPhotoDescription
300A,079A  X      DisplacementReferenceLabel
300C,0113  X      ReasonForOmissionDescription
300C,0127  D      BeamHoldTransitionDateTime
300E,0004  Z      ReviewDate
300E,0005  Z      ReviewTime
300E,0008  X/Z    ReviewerName
3010,0006  U      ConceptualVolumeUID
3010,000B  U      ReferencedConceptualVolumeUID
3010,000F  Z      ConceptualVolumeCombinationDescription
3010,0013  U      ConstituentConceptualVolumeUID
3010,0015  U      SourceConceptualVolumeUID
3010,0017  Z      ConceptualVolumeDescription
3010,001B  Z      DeviceAlternateIdentifier
3010,002D  D      DeviceLabel
3010,0031  U      ReferencedFiducialsUID
3010,0033  D      UserContentLabel
3010,0034  D      UserContentLongLabel
3010,0035  D      EntityLabel
3010,0036  X      EntityName
3010,0037  X      EntityDescription
3010,0038  D      EntityLongLabel
3010,003B  U      RTTreatmentPhaseUID
3010,0043  Z      ManufacturerDeviceIdentifier
3010,004C  X/D    IntendedPhaseStartDate
3010,004D  X/D    IntendedPhaseEndDate
3010,0054  D      RTPrescriptionLabel
3010,0056  X/D    RTTreatmentApproachLabel
3010,005A  Z      RTPhysicianIntentNarrative
3010,005C  Z      ReasonForSuperseding
3010,0061  X      PriorTreatmentDoseDescription
3010,006E  U      DosimetricObjectiveUID
3010,006F  U      ReferencedDosimetricObjectiveUID
3010,0077  X/D    TreatmentSite
3010,007A  Z      TreatmentTechniqueNotes
3010,007B  Z      PrescriptionNotes
3010,007F  Z      FractionationNotes
3010,0081  Z      PrescriptionNotesSequence
3010,0085  X      IntendedFractionStartTime
4000,0010  X      Arbitrary
4000,4000  X      TextComments
4008,0040  X      ResultsID
4008,0042  X      ResultsIDIssuer
4008,0100  X      InterpretationRecordedDate
4008,0101  X      InterpretationRecordedTime
4008,0102  X      InterpretationRecorder
4008,0108  X      InterpretationTranscriptionDate
4008,0109  X      InterpretationTranscriptionTime
4008,010A  X      InterpretationTranscriber
4008,010B  X      InterpretationText
4008,010C  X      InterpretationAuthor
4008,0111  X      InterpretationApproverSequence
4008,0112  X      InterpretationApprovalDate
4008,0113  X      InterpretationApprovalTime
4008,0114  X      PhysicianApprovingInterpretation
4008,0115  X      InterpretationDiagnosisDescription
4008,0118  X      ResultsDistributionListSequence
4008,0119  X      DistributionName
4008,011A  X      DistributionAddress
4008,0200  X      InterpretationID
4008,0202  X      InterpretationIDIssuer
4008,0300  X      Impressions
4008,4000  X      ResultsComments
FFFA,FFFA  X      DigitalSignaturesSequence
FFFC,FFFC  X      DataSetTrailingPadding
"""

# A combined code resolves to the single action used here (see module docstring).
_RESOLVE = {"D": "D", "Z": "Z", "X": "X", "U": "U", "X/Z": "Z", "X/D": "X", "Z/D": "Z", "X/Z/D": "Z", "X/Z/U*": "U"}

# Not in Table E.1-1 (file meta), removed as a precaution: station AE titles and private data.
_EXTRA_ACTIONS = {
    0x00020016: "X",  # SourceApplicationEntityTitle
    0x00020017: "X",  # SendingApplicationEntityTitle
    0x00020018: "X",  # ReceivingApplicationEntityTitle
    0x00020100: "X",  # PrivateInformationCreatorUID
    0x00020102: "X",  # PrivateInformation
}


def _parse_table(text: str) -> dict[int, str]:
    actions: dict[int, str] = {}
    for line in text.strip().splitlines():
        tag_text, code, _keyword = line.split()
        group, elem = tag_text.split(",")
        actions[int(group + elem, 16)] = _RESOLVE[code]
    return actions


#: tag (int) -> resolved action ("D", "Z", "X" or "U") for every row of the table, plus the extras.
BASIC_PROFILE_ACTIONS: dict[int, str] = {**_parse_table(BASIC_PROFILE_TABLE), **_EXTRA_ACTIONS}

_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, Any] = {
    "AE": _DUMMY_TEXT,
    "AS": "000Y",
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000.000000",
    "IS": "0",
    "LO": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "PN": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "TM": "000000.00",
    "UC": _DUMMY_TEXT,
    "UR": "urn:anonymized",
    "UT": _DUMMY_TEXT,
    "AT": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OD": b"\x00" * 8,
    "OV": b"\x00" * 8,
}

_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEID_METHOD_TAG = 0x00120063
_DEID_METHOD_CODE_SEQ = 0x00120064


@dataclass(frozen=True)
class DeidResult:
    """What ``deidentify`` returns.

    ``dataset``: the de-identified copy; ``removed``: the original values (see module
    docstring), enough for ``reidentify``; ``uid_map``: original UID -> new UID.
    """

    dataset: Dataset
    removed: dict[str, Any]
    uid_map: dict[str, str]

    def removed_bytes(self) -> bytes:
        """``removed`` as compact canonical JSON (UTF-8): the PHI message to seal."""
        return removed_to_bytes(self.removed)


def new_uid(old: str, uid_key: bytes) -> str:
    """The pseudonymous UID for ``old``: ``2.25.`` + decimal of HMAC-SHA256(uid_key, old)[:16]."""
    _check_uid_key(uid_key)
    digest = hmac.new(bytes(uid_key), old.strip("\x00 ").encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _check_uid_key(uid_key: bytes) -> None:
    if not isinstance(uid_key, (bytes, bytearray)) or len(uid_key) < MIN_UID_KEY_BYTES:
        raise DeidError(f"uid_key must be at least {MIN_UID_KEY_BYTES} bytes (use Keyring.uid_key())")


def removed_to_bytes(removed: dict[str, Any]) -> bytes:
    """Compact canonical JSON of a ``removed`` structure."""
    return json.dumps(removed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def removed_from_bytes(data: bytes) -> dict[str, Any]:
    """Inverse of ``removed_to_bytes``, with the format checked."""
    try:
        removed = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DeidError("removed-values record is not UTF-8 JSON") from None
    _check_removed(removed)
    return removed


def _check_removed(removed: Any) -> None:
    if not isinstance(removed, dict) or removed.get("format") != REMOVED_FORMAT:
        raise DeidError(f"not a removed-values record (expected format {REMOVED_FORMAT!r})")
    if removed.get("version") != REMOVED_VERSION:
        raise DeidError(
            f"removed-values record version {removed.get('version')!r} is not supported;"
            f" this reader knows {REMOVED_VERSION}"
        )
    if not isinstance(removed.get("elements"), dict):
        raise DeidError("removed-values record has no 'elements' object")


# --------------------------------------------------------------------------------------
# Element encoding (original values -> JSON and back)


def _encode_scalar(vr: str, value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if vr in _STRING_VRS:
        return str(value)
    if isinstance(value, float) or vr in _FLOAT_VRS:
        return {"float": float(value).hex()}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return value
    raise DeidError(f"cannot record a value of type {type(value).__name__} for VR {vr}")


def _decode_scalar(value: Any) -> Any:
    if isinstance(value, dict):
        if "b64" in value:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise DeidError("removed-values record holds invalid base64") from None
        if "float" in value:
            try:
                return float.fromhex(value["float"])
            except (ValueError, TypeError):
                raise DeidError("removed-values record holds an invalid float") from None
        raise DeidError(f"removed-values record holds an unknown value object with keys {sorted(value)}")
    return value


def _encode_element(elem: DataElement) -> dict[str, Any]:
    vr = elem.VR
    if vr == "SQ":
        return {"vr": "SQ", "items": [_encode_dataset(item) for item in (elem.value or [])]}
    value = elem.value
    if value is None:
        encoded = None
    elif isinstance(value, (MultiValue, list, tuple)):
        encoded = [_encode_scalar(vr, v) for v in value]
    else:
        encoded = _encode_scalar(vr, value)
    return {"vr": vr, "value": encoded}


def _encode_dataset(ds: Dataset) -> dict[str, Any]:
    return {f"{int(tag):08X}": _encode_element(ds[tag]) for tag in list(ds.keys())}


def _decode_element(tag: int, enc: Any) -> DataElement:
    if not isinstance(enc, dict) or not isinstance(enc.get("vr"), str):
        raise DeidError(f"removed-values record: element {tag:08X} is malformed")
    vr = enc["vr"]
    if vr == "SQ":
        items = enc.get("items")
        if not isinstance(items, list):
            raise DeidError(f"removed-values record: sequence {tag:08X} has no item list")
        return DataElement(tag, "SQ", Sequence([_decode_dataset(item) for item in items]))
    value = enc.get("value")
    if isinstance(value, list):
        decoded: Any = [_decode_scalar(v) for v in value]
    elif value is None:
        decoded = None
    else:
        decoded = _decode_scalar(value)
    return DataElement(tag, vr, decoded)


def _decode_dataset(enc: Any) -> Dataset:
    if not isinstance(enc, dict):
        raise DeidError("removed-values record: a sequence item is not an object")
    ds = Dataset()
    for key, value in enc.items():
        tag = _parse_tag(key)
        ds[tag] = _decode_element(tag, value)
    return ds


def _parse_tag(text: str) -> int:
    if len(text) != 8:
        raise DeidError(f"removed-values record: {text!r} is not an 8-digit hex tag")
    try:
        return int(text, 16)
    except ValueError:
        raise DeidError(f"removed-values record: {text!r} is not an 8-digit hex tag") from None


# --------------------------------------------------------------------------------------
# The walk


def _action(tag: BaseTag, *, in_meta: bool) -> str | None:
    if tag.is_private:
        return "X"
    action = BASIC_PROFILE_ACTIONS.get(int(tag))
    if action is not None:
        return action
    group, elem = tag.group, tag.element
    if group % 2 == 0 and 0x5000 <= group <= 0x50FF:  # curve data (retired repeating group)
        return "X"
    if group % 2 == 0 and 0x6000 <= group <= 0x60FF and elem in (0x3000, 0x4000):  # overlay data / comments
        return "X"
    if elem == 0x0000 and not in_meta:  # retired group lengths
        return "X"
    return None


def _empty(vr: str) -> Any:
    if vr == "SQ":
        return Sequence([])
    if vr in _STRING_VRS:
        return ""
    if vr in _BYTES_VRS:
        return b""
    return None


class _Walker:
    def __init__(self, uid_key: bytes) -> None:
        self.uid_key = bytes(uid_key)
        self.removed: dict[str, Any] = {}
        self.uid_map: dict[str, str] = {}

    def _map_uid(self, old: Any) -> str:
        old = str(old).strip("\x00 ")
        if not old:
            return old
        new = self.uid_map.get(old)
        if new is None:
            new = new_uid(old, self.uid_key)
            self.uid_map[old] = new
        return new

    def _map_uids(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (MultiValue, list, tuple)):
            return [self._map_uid(v) for v in value]
        return self._map_uid(value)

    def apply_table(self, ds: Dataset, prefix: str, *, in_meta: bool = False) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            path = f"{prefix}{int(tag):08X}"
            action = _action(elem.tag, in_meta=in_meta)
            if action is None or (action == "U" and elem.VR == "SQ"):
                if elem.VR == "SQ":
                    self._walk_items(elem, path)
                continue
            self.removed[path] = _encode_element(elem)
            if action == "X":
                del ds[tag]
            elif action == "Z" or (action == "D" and elem.VR == "SQ"):
                elem.value = _empty(elem.VR)
            elif elem.VR == "UI":  # D or U on a UID
                elem.value = self._map_uids(elem.value)
            else:  # D (or U on a non-UID VR, which the table never asks for)
                elem.value = _DUMMY_BY_VR.get(elem.VR, _empty(elem.VR))

    def _walk_items(self, elem: DataElement, path: str) -> None:
        for index, item in enumerate(elem.value or []):
            self.apply_table(item, f"{path}/{index}/")

    def replace_references(self, ds: Dataset, prefix: str) -> None:
        """Second pass: any UI element still holding a replaced UID gets the new one."""
        for tag in list(ds.keys()):
            elem = ds[tag]
            path = f"{prefix}{int(tag):08X}"
            if elem.VR == "SQ":
                for index, item in enumerate(elem.value or []):
                    self.replace_references(item, f"{path}/{index}/")
            elif elem.VR == "UI" and elem.value is not None:
                values = list(elem.value) if isinstance(elem.value, (MultiValue, list, tuple)) else [elem.value]
                if any(str(v).strip("\x00 ") in self.uid_map for v in values):
                    if path not in self.removed:
                        self.removed[path] = _encode_element(elem)
                    mapped = [self.uid_map.get(str(v).strip("\x00 "), str(v)) for v in values]
                    elem.value = mapped if len(mapped) != 1 else mapped[0]

    def set_added(self, ds: Dataset, tag: int, vr: str, value: Any) -> None:
        path = f"{tag:08X}"
        if path not in self.removed:
            self.removed[path] = _encode_element(ds[tag]) if tag in ds else {"absent": True}
        ds[tag] = DataElement(tag, vr, value)


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records: its value-validation messages quote
    values, which here are PHI."""
    logger = logging.getLogger("pydicom")
    drop = _DropAll()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeFilter(drop)


def deidentify(ds: Dataset, *, uid_key: bytes) -> DeidResult:
    """Apply the Basic Application Level Confidentiality Profile to a copy of ``ds``.

    ``ds`` is never modified. ``uid_key`` is ``Keyring.uid_key()`` (>= 16 bytes).
    """
    _check_uid_key(uid_key)
    if not isinstance(ds, Dataset):
        raise DeidError(f"deidentify needs a pydicom Dataset, got {type(ds).__name__}")
    with _quiet_pydicom():
        out = copy.deepcopy(ds)
        walker = _Walker(uid_key)
        meta = getattr(out, "file_meta", None)
        if meta is not None:
            walker.apply_table(meta, "meta/", in_meta=True)
        walker.apply_table(out, "")
        if meta is not None:
            walker.replace_references(meta, "meta/")
        walker.replace_references(out, "")
        walker.set_added(out, _PATIENT_IDENTITY_REMOVED, "CS", "YES")
        walker.set_added(out, _DEID_METHOD_TAG, "LO", DEID_METHOD)
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DEID_METHOD_CODE
        walker.set_added(out, _DEID_METHOD_CODE_SEQ, "SQ", Sequence([code]))
    removed = {"format": REMOVED_FORMAT, "version": REMOVED_VERSION, "elements": walker.removed}
    return DeidResult(dataset=out, removed=removed, uid_map=dict(walker.uid_map))


def reidentify(ds_deid: Dataset, removed: dict[str, Any]) -> Dataset:
    """Put the values recorded in ``removed`` back into a copy of ``ds_deid``."""
    _check_removed(removed)
    with _quiet_pydicom():
        out = copy.deepcopy(ds_deid)
        for path, enc in removed["elements"].items():
            parent, tag = _navigate(out, path)
            if isinstance(enc, dict) and enc.get("absent") is True:
                if tag in parent:
                    del parent[tag]
            else:
                parent[tag] = _decode_element(tag, enc)
    return out


def _navigate(ds: Dataset, path: str) -> tuple[Dataset, int]:
    parts = path.split("/")
    parent: Dataset = ds
    if parts and parts[0] == "meta":
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            raise DeidError(f"removed-values path {path!r} refers to file meta, which the dataset lacks")
        parent, parts = meta, parts[1:]
    if len(parts) % 2 != 1:
        raise DeidError(f"removed-values path {path!r} is malformed")
    for i in range(0, len(parts) - 1, 2):
        tag = _parse_tag(parts[i])
        try:
            index = int(parts[i + 1])
            parent = parent[tag].value[index]
        except (KeyError, IndexError, ValueError, TypeError):
            raise DeidError(f"removed-values path {path!r} does not exist in this dataset") from None
    return parent, _parse_tag(parts[-1])
